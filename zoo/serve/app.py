"""The HTTP layer of ``zoo serve``: a JSON search API, the images of the collection's rows, and one page.

(No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations at run time.)
"""

import io
import logging
import os
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from zoo.collection.inputs import is_image_name
from zoo.collection.store import CollectionError
from zoo.serve.engine import Batcher, Engine, Query, QueryError

log = logging.getLogger("zoo.serve")

SERVE_EXTRA = "pip install 'pe-zoo[serve]'"
THUMB_SIZES = range(16, 1025)
MAX_UPLOAD = 32 * 2**20  # bytes


def _require():
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (image uploads)
        import uvicorn  # noqa: F401
    except ImportError:
        raise OSError(f"zoo serve needs fastapi, uvicorn and python-multipart: {SERVE_EXTRA}") from None


def create_app(directory: str | os.PathLike, *, exact: bool = False, device: str | None = None,
               weights_dir: str | os.PathLike | None = None, engine: Engine | None = None):
    """The FastAPI app serving the collection in ``directory`` (see ``docs/search-index.md`` for the routes)."""
    _require()
    from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    engine = engine or Engine(directory, exact=exact, device=device, weights_dir=weights_dir)
    batcher = Batcher(engine)
    page = resources.files("zoo.serve").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        log.info(f"serving {engine.directory}: {engine.rows} rows of {engine.manifest['model']}, search by "
                 f"{engine.searcher.method}" + (f" ({engine.searcher.reason})" if engine.searcher.reason else ""))
        yield
        await batcher.stop()

    app = FastAPI(title="pe-zoo search", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.batcher = engine, batcher

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        log.info(f'{request.client.host if request.client else "-"} "{request.method} {request.url.path}'
                 f'{"?" + request.url.query if request.url.query else ""}" {response.status_code} '
                 f"{(time.perf_counter() - start) * 1000:.1f} ms")
        return response

    async def answer(query: Query) -> dict:
        try:
            engine.check(query)
            return await batcher.submit(query)
        except (QueryError, CollectionError) as e:
            raise HTTPException(400, str(e)) from None

    @app.get("/", response_class=HTMLResponse)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/info")
    async def info() -> dict:
        return engine.info()

    @app.get("/search")
    async def search_get(text: str | None = None, image_row: int | None = None, k: int = 10) -> dict:
        if (text is None) == (image_row is None):
            raise HTTPException(400, "give exactly one of text=... or image_row=N")
        return await answer(Query(k=k, text=text, row=image_row))

    @app.post("/search")
    async def search_post(image: UploadFile = File(...), k: int = Form(10)) -> dict:
        data = await image.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise HTTPException(413, f"the image is larger than {MAX_UPLOAD // 2**20} MB")
        try:
            picture = await run_in_threadpool(_decode, data)
        except Exception as e:  # noqa: BLE001 -- any decoding failure of an uploaded file is the client's
            raise HTTPException(400, f"cannot read the uploaded image: {type(e).__name__}: {e}") from None
        return await answer(Query(k=k, image=picture))

    @app.get("/image/{row:int}")
    async def image(row: int, size: int | None = None) -> Response:
        """The image of one row of the collection (a JPEG thumbnail at most ``size`` pixels a side when asked)."""
        if not 0 <= row < engine.rows:
            raise HTTPException(404, f"no row {row}")
        path = Path(engine.row_info(row)["path"])
        if not is_image_name(path.name) or not path.is_file():
            raise HTTPException(404, f"row {row} has no image file")
        if size is None:
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        if size not in THUMB_SIZES:
            raise HTTPException(400, f"size must be in {THUMB_SIZES.start}..{THUMB_SIZES.stop - 1}")
        return Response(await run_in_threadpool(_thumbnail, path, size), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": problems}, status_code=400)

    return app


def _decode(data: bytes):
    """An uploaded image, loaded and upright (Pillow refuses decompression bombs)."""
    from PIL import Image

    from zoo.images import upright

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return upright(im)


def _thumbnail(path: Path, size: int) -> bytes:
    from zoo.inference import open_image

    picture = open_image(path)
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


def serve(directory: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, exact: bool = False,
          device: str | None = None, weights_dir: str | os.PathLike | None = None) -> None:
    """Serve the collection in ``directory`` on ``host:port`` until stopped (Ctrl-C)."""
    _require()
    import uvicorn

    app = create_app(directory, exact=exact, device=device, weights_dir=weights_dir)
    log.info(f"open http://{host}:{port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")


__all__ = ["create_app", "serve"]
