"""Test infrastructure: scripts and helpers that provide Docker, images and VMs to the tests."""
