"""The language-model benchmark: learned N:M masks for a pretrained byte-level Llama.

``corpus`` prepares the offline text, ``pretrain`` trains the dense model (resumable, with
the one-shot gap measured at its checkpoints), ``methods`` runs one pruning method for a
token budget (one-shot, fine-tuned one-shot, DPP mask-only, DPP with weights), and ``cli``
is ``dpp lm``. See docs/transformers.md.
"""
