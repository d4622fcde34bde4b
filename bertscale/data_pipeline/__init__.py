"""Ray pipeline: raw Wikipedia dumps and books → WebDataset shards of masked NSP pairs."""
