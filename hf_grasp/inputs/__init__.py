"""What a merge reads: the target dataset (and recipes, converters), the source checkpoints resolved, checked and
streamed, their labels, and the model families that build, feed and save them."""
