"""Model providers behind one interface (`ModelProvider`)."""
