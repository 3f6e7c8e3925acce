"""`edgekit report`: convert, quantize, eval and bench every target of a model into one report card."""
