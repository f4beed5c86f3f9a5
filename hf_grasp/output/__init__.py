"""What a merge leaves: the typed report, its tables, the heatmap, the model card, the resume state and the
upload to the Hub."""
