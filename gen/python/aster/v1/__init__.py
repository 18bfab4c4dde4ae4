"""Generated from proto/aster/v1. Do not edit."""
