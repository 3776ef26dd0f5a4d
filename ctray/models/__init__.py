"""Model sources shared by the encoder jobs (packaged encoders, hub ids, folders, s3://)."""

from ctray.models.encoders import (DEFAULT_ENGLISH_ENCODER, JAPANESE_ENCODER, PACKAGED_ENCODERS,
                                   default_encoder, resolve_encoder_source)

__all__ = ["DEFAULT_ENGLISH_ENCODER", "JAPANESE_ENCODER", "PACKAGED_ENCODERS", "default_encoder",
           "resolve_encoder_source"]
