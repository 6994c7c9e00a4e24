"""Driver plumbing shared by the packages that talk to the same service."""
