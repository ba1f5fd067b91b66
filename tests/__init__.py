"""hopscotch's test suite: a package, so that every test imports its shared helpers by one absolute name,
``tests.helpers.<module>`` (pytest puts the checkout root on sys.path for a package rooted there)."""
