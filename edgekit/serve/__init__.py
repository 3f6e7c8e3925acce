"""Serving: the local model store (content-addressed blobs + name:tag manifests), the Modelfile, and the
Ollama- and OpenAI-compatible HTTP server over every artifact format edgekit runs."""
