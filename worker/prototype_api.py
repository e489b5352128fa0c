"""The prototype's library API, kept working on top of the engines."""

from __future__ import annotations

from shared.spec import BoostSpec, GenerationParams, GenerationRequest


class InstaBoostTransformerLens:
    """Boosted generation with the prototype's constructor and ``generate`` signature (TransformerLens engine)."""

    def __init__(self, model_name: str = "smollm2-135m-instruct", boost_middle_layers_only: bool = False,
                 num_middle_layers: int = 5, start_layer: int = 8, head_boost_percentage: float = 100.0,
                 random_seed: int = 42, placement: str = "system", device: str = "auto", dtype: str = "auto",
                 engine: str = "transformerlens"):
        from worker.engine import get_engine

        self.engine = get_engine(model_name, engine, device=device, dtype=dtype)
        self.model_name = model_name
        self.spec = BoostSpec(layers="middle" if boost_middle_layers_only else "all", start_layer=start_layer,
                              num_middle_layers=num_middle_layers, head_fraction=head_boost_percentage / 100.0,
                              seed=random_seed, placement=placement)

    def generate(self, instruction: str, query: str, multiplier: float = 10.0, max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 0.9, do_sample: bool = False) -> str:
        """Return the boosted completion for an instruction and a query."""
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                  top_p=top_p if do_sample else 1.0, seed=self.spec.seed)
        req = GenerationRequest(instruction, query, self.spec.with_(multiplier=multiplier), params)
        return self.engine.generate([req])[0].text
