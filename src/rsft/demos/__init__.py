"""Programs built on everything (layer 6): ``demo`` (``make demo``: Best-of-N and RSFT rounds on the
embedded Gemma) and ``demo_real`` (``make demo-real``: Qwen2.5-Coder on HumanEval and chain_sum).
``python -m rsft.demo`` and ``python -m rsft.demo_real`` run them (``rsft.MOVED``).
"""
