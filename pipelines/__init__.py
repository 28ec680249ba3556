"""The build recipes, installed with the package as `mpt_data.pipelines` (see pyproject.toml), so that
`mpt-data build --recipe amass-mpt` finds them without a checkout; `mpt_data.recipe.find_recipe` looks them up."""
