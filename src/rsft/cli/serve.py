"""``rsft serve``: Best-of-N over the OpenAI API (``rsft.serve``)."""

from __future__ import annotations

from rsft import serve
from rsft.cli.options import Command

COMMANDS = {"serve": Command("serve Best-of-N over the OpenAI API (/v1/completions, /v1/chat/completions)",
                             serve.add_arguments, serve.main)}
