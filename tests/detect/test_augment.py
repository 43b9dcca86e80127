"""Augmentations keep boxes and keypoints on the faces; the loss trains the pretrained heads."""
import numpy as np
import torch
from skimage import data as skdata
from torchvision.ops import box_iou

from transferlab.detect.augment import AugmentConfig, augment, hflip, random_crop, zoom_out
from transferlab.detect.detector import Detector
from transferlab.detect.image import letterbox, to_tensor
from transferlab.detect.loss import DetectionLoss
from transferlab.detect.weights import load_pretrained

# astronaut face as the pretrained front model reports it, with its keypoints
FACE = np.float32([[177, 81, 272, 175]])
KPS = np.float32([[[203, 101], [247, 108], [222, 125], [219, 146], [177, 109], [271, 124]]])


def test_hflip_mirrors_and_swaps_sides():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255
    boxes, kps = np.float32([[2, 1, 6, 5]]), np.float32([[[3, 2], [5, 2], [4, 3], [4, 4], [2, 2], [6, 2]]])
    out, b, k = hflip(image, boxes, kps)
    assert out[:, -5:].min() == 255
    np.testing.assert_allclose(b, [[14, 1, 18, 5]])
    # the person's right eye (index 0) was at x=3; after the flip it is the old left eye mirrored
    np.testing.assert_allclose(k[0, 0], [20 - 5, 2])
    np.testing.assert_allclose(k[0, 4], [20 - 6, 2])


def test_zoom_out_moves_boxes_with_the_image():
    rng = np.random.default_rng(0)
    image = skdata.astronaut()
    out, boxes, kps = zoom_out(image, FACE, KPS, rng, 2.0)
    x, y = boxes[0, 0] - FACE[0, 0], boxes[0, 1] - FACE[0, 1]
    np.testing.assert_array_equal(out[int(y):int(y) + 512, int(x):int(x) + 512], image)
    np.testing.assert_allclose(kps - KPS, np.broadcast_to([x, y], KPS.shape))


def test_random_crop_keeps_the_face_inside():
    for seed in range(20):
        image, boxes, kps = random_crop(skdata.astronaut(), FACE, KPS, np.random.default_rng(seed), (0.1, 0.3, 0.5))
        h, w = image.shape[:2]
        assert len(boxes) == 1
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_pretrained_model_still_finds_augmented_faces():
    """Geometry checked end to end: the face the network sees is where the targets say."""
    detector = Detector(load_pretrained("blazeface_front"))
    rng = np.random.default_rng(3)
    for _ in range(4):
        config = AugmentConfig(zoom_out_p=1.0, zoom_out_max=1.5, crop_p=0.0, flip_p=0.5)
        image, boxes, _ = augment(skdata.astronaut(), FACE, KPS, rng, config)
        found = detector.detect_arrays([image])[0]
        assert len(found.boxes) >= 1
        assert box_iou(found.boxes, torch.from_numpy(boxes)).max() > 0.7


def test_loss_is_small_for_pretrained_model_on_a_real_face():
    model = load_pretrained("blazeface_front")
    image, lb = letterbox(skdata.astronaut(), 128)
    boxes = (torch.from_numpy(FACE) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y] * 2)) / 128
    kps = (torch.from_numpy(KPS) * lb.scale + torch.tensor([lb.pad_x, lb.pad_y])) / 128
    criterion = DetectionLoss(model.config.anchors)
    with torch.no_grad():
        right = criterion(*model(to_tensor(image)[None]), [(boxes, kps)])
        wrong = criterion(*model(to_tensor(image)[None]), [(boxes.flip(-1).clamp(0, 1) * 0.3, kps)])
    assert right["loss"] < 1.0 and right["box"] < 0.05 and right["kp"] < 0.1
    assert wrong["loss"] > 3 * right["loss"]


def test_loss_without_faces_still_penalises_false_alarms():
    model = load_pretrained("blazeface_front")
    criterion = DetectionLoss(model.config.anchors)
    reg, logits = model(torch.zeros(1, 3, 128, 128))
    losses = criterion(reg, logits + 5, [(torch.zeros(0, 4), torch.zeros(0, 6, 2))])
    assert losses["cls"] > 1 and losses["box"] == 0
    losses["loss"].backward()


def test_colour_jitter_leaves_the_letterbox_border_black(tmp_path):
    """Jitter runs after the letterbox (cheaper), on the picture only: the border stays the zeros
    (-1 after scaling) the pretrained model was trained with."""
    from PIL import Image

    from transferlab.detect.data import Sample
    from transferlab.detect.training import FaceTrainSet

    Image.fromarray(np.full((100, 300, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    sample = Sample(tmp_path / "wide.png", np.float32([[100, 20, 160, 80]]),
                    np.full((1, 6, 2), np.nan, np.float32))
    config = AugmentConfig(jitter=0.5, zoom_out_p=0.0, crop_p=0.0, flip_p=0.0)
    x, _, _ = FaceTrainSet([sample], 128, config, seed=1)[0]
    assert torch.all(x[:, :40] == -1) and torch.all(x[:, -40:] == -1)   # the border rows
    assert not torch.allclose(x[:, 64], torch.full_like(x[:, 64], 90 / 127.5 - 1))  # the picture was jittered
