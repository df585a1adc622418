"""Test doubles: stand-ins, clearly named, for what cannot be had on the test machines.

* ``fake_packer.py``: records how ``owuibuild bake`` calls Packer (unit tier);
* ``ollama_double.py`` and ``qdrant_double.py``: tiny servers that answer the endpoints
  owuibuild probes, packed by :mod:`doubles.mirror` into tarballs shaped like the real
  releases and served from a local mirror (boot tier). They check OUR install steps, never
  Ollama or Qdrant themselves.
"""
