"""Training-time VITS pieces that `transformers.VitsModel` (inference-only) lacks.

`spectrogram` (linear + mel in torch), `alignment` (monotonic alignment search, numba),
`discriminator` (HiFi-GAN multi-period + multi-scale), `losses`, and `generator` (the
training forward over VitsModel's own submodules). Import the submodules directly; this
package imports nothing heavy on its own.
"""
