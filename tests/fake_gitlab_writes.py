"""The loopback GitLab server (`fake_gitlab.FakeGitLab`) plus the endpoints write-back uses.

    GET  /api/v4/projects/:id/repository/branches/:branch
    POST /api/v4/projects/:id/repository/commits          (actions; branch + start_sha/start_branch)
    POST /api/v4/projects/:id/merge_requests
    GET  /api/v4/projects/:id/merge_requests              (?source_branch=)
    POST /<repo>.git/info/lfs/objects/batch               operation "upload" (download as before)
    PUT  /<repo>.git/gitlab-lfs/objects/:oid/:size        the upload itself (sha256 checked)

Like GitLab, a commit action that creates an existing file or updates a missing one is a 400,
and an upload whose bytes do not hash to the oid is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote

from fake_gitlab import LFS_MEDIA_TYPE, FakeGitLab, FakeProject, FakeRequest, FakeResponse


class FakeGitLabWrites(FakeGitLab):
    """FakeGitLab that also accepts branches, commits, merge requests and LFS uploads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.merge_requests: list[dict[str, Any]] = []
        self.lfs_upload_token = "upload-" + self.lfs_download_token
        api = r"^/api/v4/projects/(?P<project>[^/]+)"
        self.add_route("GET", api + r"/repository/branches/(?P<branch>[^/]+)$", self._get_branch)
        self.add_route("POST", api + r"/repository/commits$", self._post_commit)
        self.add_route("POST", api + r"/merge_requests$", self._post_mr)
        self.add_route("GET", api + r"/merge_requests$", self._list_mrs)
        self.add_route("POST", r"^/(?P<repo>.+)\.git/info/lfs/objects/batch$", self._lfs_batch_upload)
        self.add_route(
            "PUT",
            r"^/(?P<repo>.+)\.git/gitlab-lfs/objects/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)$",
            self._lfs_put,
        )

    # ---------------------------------------------------------------- REST

    def _get_branch(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        sha = project.branches.get(request.groups["branch"])
        if sha is None:
            return FakeResponse.error(404, "404 Branch Not Found")
        return FakeResponse.json({"name": request.groups["branch"], "commit": {"id": sha}})

    def _post_commit(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        body = request.json()
        branch = body.get("branch")
        if not branch or not body.get("commit_message"):
            return FakeResponse.error(400, "branch and commit_message are required")
        if branch in project.branches:
            base = project.branches[branch]
            if body.get("start_sha") or body.get("start_branch"):
                return FakeResponse.error(400, f"A branch called '{branch}' already exists")
        else:
            start = body.get("start_sha") or body.get("start_branch")
            base = project.resolve(start) if start else None
            if base is None:
                return FakeResponse.error(400, "You can only create or edit files when you are on a branch")
        files = dict(project.commits[base])
        for action in body.get("actions", []):
            path, kind = action["file_path"], action["action"]
            content = action.get("content", "")
            data = (
                base64.b64decode(content) if action.get("encoding") == "base64" else content.encode("utf-8")
            )
            if kind == "create":
                if path in files:
                    return FakeResponse.error(400, f"A file with this name already exists: {path}")
                files[path] = data
            elif kind == "update":
                if path not in files:
                    return FakeResponse.error(400, f"A file with this name doesn't exist: {path}")
                files[path] = data
            elif kind == "delete":
                files.pop(path, None)
            else:
                return FakeResponse.error(400, f"unsupported action {kind}")
        project.branches.setdefault(branch, base)
        sha = project.commit(files, branch=branch, message=body["commit_message"])
        return FakeResponse.json({"id": sha, "short_id": sha[:8], "title": body["commit_message"]}, 201)

    def _post_mr(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        body = request.json()
        for key in ("source_branch", "target_branch", "title"):
            if not body.get(key):
                return FakeResponse.error(400, f"{key} is missing")
        if body["source_branch"] not in project.branches or body["target_branch"] not in project.branches:
            return FakeResponse.error(400, "branch does not exist")
        iid = len([m for m in self.merge_requests if m["project_id"] == project.id]) + 1
        mr = {
            "id": 1000 + len(self.merge_requests),
            "iid": iid,
            "project_id": project.id,
            "state": "opened",
            "web_url": f"{self.url}/{project.path_with_namespace}/-/merge_requests/{iid}",
            **{k: body[k] for k in ("source_branch", "target_branch", "title")},
            "description": body.get("description", ""),
        }
        self.merge_requests.append(mr)
        return FakeResponse.json(mr, 201)

    def _list_mrs(self, request: FakeRequest) -> FakeResponse:
        project = self._project_or_404(request)
        if isinstance(project, FakeResponse):
            return project
        found = [
            m
            for m in self.merge_requests
            if m["project_id"] == project.id
            and request.query.get("source_branch", m["source_branch"]) == m["source_branch"]
        ]
        return FakeResponse.json(found)

    # ---------------------------------------------------------------- LFS upload

    def _lfs_batch_upload(self, request: FakeRequest) -> FakeResponse:
        if request.json().get("operation") != "upload":
            return self._lfs_batch(request)
        if not self._basic_auth_ok(request):
            return FakeResponse(401, b'{"message":"Access denied"}', content_type=LFS_MEDIA_TYPE)
        project = self._lfs_project(request)
        if isinstance(project, FakeResponse):
            return project
        objects = []
        for obj in request.json().get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:  # like GitLab: no actions = already stored
                href = f"{self.url}/{quote(project.path_with_namespace)}.git/gitlab-lfs/objects/{oid}/{size}"
                entry["actions"] = {
                    "upload": {
                        "href": href,
                        "header": {"Authorization": f"RemoteAuth {self.lfs_upload_token}"},
                    }
                }
            objects.append(entry)
        return FakeResponse(
            200, json.dumps({"transfer": "basic", "objects": objects}).encode(), content_type=LFS_MEDIA_TYPE
        )

    def _lfs_put(self, request: FakeRequest) -> FakeResponse:
        if request.headers.get("Authorization") != f"RemoteAuth {self.lfs_upload_token}":
            return FakeResponse.error(401, "401 Unauthorized")
        data = request.body
        if hashlib.sha256(data).hexdigest() != request.groups["oid"] or len(data) != int(
            request.groups["size"]
        ):
            return FakeResponse.error(422, "content does not match the oid/size")
        self.lfs_objects[request.groups["oid"]] = data
        return FakeResponse(200, b"", content_type="text/plain")


def branch_files(project: FakeProject, branch: str) -> dict[str, bytes]:
    return project.files(branch)
