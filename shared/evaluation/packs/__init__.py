"""Built-in case packs (YAML data files) and the generator of the IFEval pack."""
