"""teeny-ray: the ``ray`` executor, one Ray task per variant."""
