"""The S3 listener: verify, encrypt and stream every object operation (SPEC 7).

Modules, in the order a request meets them: ``server`` (listener, dispatch, error rendering),
``handlers`` (the operation table), ``objects`` / ``copy`` / ``multipart`` / ``listing`` (what
each operation does), ``streams`` (bodies both ways), ``info`` / ``headers`` / ``conditions`` /
``layouts`` (what a stored object is and what the client sees of it), ``store`` (shared
upstream conversations), ``upstream`` (the signed aiohttp client), ``context`` (dependencies).
docs/S3.md describes the behaviour; docs/FORMAT.md section 5 every stored byte.
"""
