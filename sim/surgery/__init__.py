"""Surgery physics: distance to the vertebrae's bone surfaces and the cortical breaches of drilled
channels (Gertzbein-Robbins grades), batched over environments."""
