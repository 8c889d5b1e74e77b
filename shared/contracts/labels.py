"""The four AG News topics; a label id is the index here, a CSV class index is the id plus one."""

LABELS: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {label: index for index, label in enumerate(LABELS)}
