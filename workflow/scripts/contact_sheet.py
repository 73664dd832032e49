"""Contact sheet of one model's reconstructions for the report (rule contact_sheet).

One row per dataset: the first faces' overlays (the mesh drawn over the photo) and, below
them, the plain renders, as written by `emoca reconstruct --save renders,overlays` under
results/reconstruct/MODEL/DATASET/{overlays,renders}/. Runs as a Snakemake `script:`.
"""


from pathlib import Path

from PIL import Image, ImageDraw

TILE = 160


def _tiles(folder: Path, count: int) -> list[Image.Image]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    tiles = []
    for path in files[:count]:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((TILE, TILE))
            tile = Image.new("RGB", (TILE, TILE), "white")
            tile.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
            tiles.append(tile)
    return tiles


def contact_sheet(folders: dict[str, Path], count: int, out: Path) -> None:
    rows: list[tuple[str, list[Image.Image]]] = []
    for dataset, folder in folders.items():
        for kind in ("overlays", "renders"):
            rows.append((f"{dataset} {kind}", _tiles(folder / kind, count)))
    label_width = 170
    width = label_width + TILE * max(1, max(len(tiles) for _, tiles in rows))
    sheet = Image.new("RGB", (width, TILE * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, tiles) in enumerate(rows):
        draw.text((6, row * TILE + TILE // 2), label, fill="black")
        if not tiles:
            draw.text((label_width + 6, row * TILE + TILE // 2), "(none written)", fill="gray")
        for column, tile in enumerate(tiles):
            sheet.paste(tile, (label_width + column * TILE, row * TILE))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    sheet.save(tmp, format="PNG")
    tmp.replace(out)


if __name__ == "__main__" and "snakemake" in globals():
    snakemake = globals()["snakemake"]
    contact_sheet({name: Path(folder) for name, folder in snakemake.params.folders.items()},
                  snakemake.params.faces, Path(snakemake.output[0]))
