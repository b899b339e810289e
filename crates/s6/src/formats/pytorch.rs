//! PyTorch `pytorch_model.bin` (zip + pickle) reader. See `read_pytorch_bin`.
