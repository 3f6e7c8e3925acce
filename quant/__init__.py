"""Number grids (Q4_0, Q4_1, Q8_0, int4 block sym/asym, NF4 codebook), quantization algorithms (RTN,
NF4, GPTQ, AWQ), calibration data, importance matrices and the llama.cpp k-quant bridge. A quantizer
takes a Grid from the target format and returns codes that format stores exactly."""
