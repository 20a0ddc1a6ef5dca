"""The vCenter simulator harness (tests and demo only): ``VcsimHarness``."""

from pipeline.vsphere.sim.harness import SimDisk, SimulatorError, VcsimHarness, build_binary

__all__ = ["SimDisk", "SimulatorError", "VcsimHarness", "build_binary"]
