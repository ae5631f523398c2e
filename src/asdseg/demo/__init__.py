"""The main job (``asdseg demo``), the phantom model it trains where no real data is found,
and the synthetic phantoms that the demo and the tests use."""
