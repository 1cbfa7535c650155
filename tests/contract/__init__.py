"""The Driver contract suite: the same tests against every driver."""
