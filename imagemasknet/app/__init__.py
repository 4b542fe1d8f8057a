"""What the pages show, computed here so that pages only place it."""
