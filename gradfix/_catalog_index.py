"""The built-in catalog, validated and compiled from patches/*.toml by
`python -m gradfix._generate`. Do not edit: edit patches/ and regenerate.
"""

SOURCES = {}

ENTRIES = [
]
