"""Pure-torch DD core: synthetic set, DSA, objectives (DC/DM), PTM guidance (CLoM/CCLoM), evaluation."""
