"""Tunable modules (PCSA, DCNv4 point layers, DeepLA-Net head) and their registry."""
