"""SFT data: file formats to records (sources), records to token batches (batches)."""
