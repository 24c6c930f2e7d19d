"""One member's resumable Adam phase (DESIGN.md §2) and the L1 pretraining stage."""
