"""What a merge will do, decided before anything heavy is imported (torch-free): every option, the license rules,
and the merge plan that owns every rule combining the options with a method's abilities (``grasp_config.json``)."""
