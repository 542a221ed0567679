"""The cell manager: the one owner of every cell's state."""
