"""Every reach into Faust's and aiokafka's internals, behind small interfaces (see pins.py)."""
