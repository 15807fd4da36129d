"""Operating the caches: seeing and cleaning step outcomes and archives."""
