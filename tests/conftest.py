import os
import sys

# Let tests import the shared case grid (tests/trelu_cases.py) as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
