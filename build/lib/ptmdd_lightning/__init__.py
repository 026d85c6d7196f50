"""ptmdd: dataset distillation guided by pre-trained models, on PyTorch Lightning."""
