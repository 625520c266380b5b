"""A Hugging Face Hub for tests: the download API huggingface_hub's own client uses, serving models the tests build.

The Hub cannot be reached here, so this serves, on a loopback port, what `snapshot_download` and `hf_hub_download`
(huggingface_hub 2.x, whose source these follow: hf_api.py `repo_info` and `_iter_repo_tree_pages`,
file_download.py `get_hf_file_metadata` and `http_get`, utils/_http.py `hf_raise_for_status`) ask of the real one:

| request | answer |
|---|---|
| `GET /api/models/<repo>/revision/<rev>` | the model's info: `sha` (the commit the revision resolves to), `siblings`, `gated` |
| `GET /api/models/<repo>/tree/<commit>?recursive=...` | every file: `path`, `size`, `oid` (its git blob sha1) and, for weights, `lfs` (`oid`: sha256, `size`) |
| `GET /api/models/<repo>/auth-check` | 200 when the token may read the (gated) repository's files, else as below |
| `HEAD` / `GET /<repo>/resolve/<rev>/<path>` | the file, with `X-Repo-Commit`, `ETag` (the blob sha1, or the sha256 of an LFS file, also as `X-Linked-Etag` with `X-Linked-Size`), `Content-Length`, and `Range` requests (a resumed download) |

Errors as the Hub answers them, with `X-Error-Code` (which the client turns into its exception classes): an
unknown repository 404 `RepoNotFound`; an unknown revision 404 `RevisionNotFound`; a gated repository's files 401
`GatedRepo` without a token and 403 `GatedRepo` with a token that has no access (its info and file list stay
public, as on the Hub); with `outage` set, every request gets 503 or 429 (with Retry-After). `served` counts the
bytes of file content sent, by repository.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp.web

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class Repo:
    files: dict[str, bytes]
    refs: dict[str, str]  # revision name -> commit
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens with access to a gated repository


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    """`async with Hub() as hub:` serves `hub.url`; `hub.add(repo_id, folder)` publishes a folder as one commit."""

    def __init__(self, rate: float | None = None):
        self.rate = rate  # bytes per second of file content (a benchmark's Hub link); None: as fast as it goes
        self.outage: int | None = None  # a status every request is answered with (429, 503): the Hub unavailable
        self.repos: dict[str, Repo] = {}
        self.served: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._runner: aiohttp.web.AppRunner | None = None

    def add(self, repo_id: str, folder: Path, gated: bool = False, tokens: set[str] | None = None) -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        commit = hashlib.sha1(repo_id.encode() + b"".join(blob_sha1(d).encode() for d in files.values())).hexdigest()
        self.repos[repo_id] = Repo(files, {"main": commit}, gated, set(tokens or ()))
        return commit

    async def __aenter__(self) -> Hub:
        app = aiohttp.web.Application()
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self._tree)
        app.router.add_get("/api/models/{org}/{name}/auth-check", self._auth_check)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(status: int, code: str, message: str) -> aiohttp.web.HTTPException:
        """An error as the Hub answers it, to raise: JSON, with `X-Error-Code` (huggingface_hub's
        hf_raise_for_status turns it into its exception classes)."""
        kind = {401: aiohttp.web.HTTPUnauthorized, 403: aiohttp.web.HTTPForbidden, 404: aiohttp.web.HTTPNotFound}
        return kind[status](text=json.dumps({"error": message}), content_type="application/json",
                            headers={"X-Error-Code": code, "X-Error-Message": message})

    def _find(self, request: aiohttp.web.Request, revision: bool = True) -> tuple[str, Repo, str]:
        """The request's repository and the commit its revision names (with `revision`), or the Hub's error: an
        outage, an unknown repository, an unknown revision. Every request is recorded."""
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests.append((request.method, request.path))
        if self.outage == 503:
            raise aiohttp.web.HTTPServiceUnavailable(text="the Hub is unavailable")
        if self.outage == 429:
            raise aiohttp.web.HTTPTooManyRequests(text="rate limited", headers={"Retry-After": "1"})
        repo = self.repos.get(repo_id)
        if repo is None:
            raise self._error(404, "RepoNotFound", "Repository not found")
        if not revision:
            return repo_id, repo, ""
        rev = request.match_info["rev"]
        commit = rev if rev in repo.refs.values() else repo.refs.get(rev)
        if commit is None:
            raise self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo_id, repo, commit

    async def _info(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        repo_id, repo, commit = self._find(request)
        return aiohttp.web.json_response({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                                          "gated": "manual" if repo.gated else False,
                                          "siblings": [{"rfilename": p} for p in repo.files]})

    def _check_access(self, repo_id: str, repo: Repo, request: aiohttp.web.Request) -> None:
        """A gated repository's files: 401 without a token, 403 with a token that has no access."""
        if not repo.gated:
            return
        token = (request.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        if not token:
            raise self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                                                 f"it and be authenticated to access it.")
        if token not in repo.tokens:
            raise self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the "
                                                 f"authorized list.")

    async def _auth_check(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        repo_id, repo, _ = self._find(request, revision=False)
        self._check_access(repo_id, repo, request)
        return aiohttp.web.json_response({})

    async def _tree(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        _, repo, _ = self._find(request)
        entries = []
        for path, data in repo.files.items():
            entry = {"type": "file", "path": path, "size": len(data), "oid": blob_sha1(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return aiohttp.web.json_response(entries)

    async def _resolve(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        repo_id, repo, commit = self._find(request)
        self._check_access(repo_id, repo, request)
        data = repo.files.get(request.match_info["path"])
        if data is None:
            raise self._error(404, "EntryNotFound", f"{request.match_info['path']} does not exist")
        lfs = request.match_info["path"].endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else blob_sha1(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return aiohttp.web.Response(status=200, headers=headers)
        start = 0
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged.removeprefix("bytes=").split("-")[0] or 0)
        body = data[start:]
        self.served[repo_id] += len(body)
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if not self.rate:
            return aiohttp.web.Response(status=status, body=body, headers=headers)
        response = aiohttp.web.StreamResponse(status=status, headers={**headers, "Content-Length": str(len(body))})
        await response.prepare(request)
        for i in range(0, len(body), 1 << 20):
            chunk = body[i:i + (1 << 20)]
            await response.write(chunk)
            await asyncio.sleep(len(chunk) / self.rate)
        await response.write_eof()
        return response
