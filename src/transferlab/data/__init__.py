"""Images as users have them: reading (EXIF, modes, guards), folder scanning and splits, decoded caches, transforms."""
