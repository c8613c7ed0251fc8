"""After training: a merged model, GGUF files and an Ollama Modelfile."""
