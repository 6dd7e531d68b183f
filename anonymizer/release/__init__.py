"""Release: publish a validated run (`publish`), prove a release is clean (`verify`), and the layout both share."""
