"""Common Crawl math mining as datatrove pipeline steps."""
