"""Configuration: typed config trees from YAML recipes plus dotted overrides (`parser`), the sections every
stage's tree shares (`sections`: run, scaling, tracking) and the shipped recipes (`recipes/`)."""
