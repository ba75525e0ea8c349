"""Local frames: regress positions in a frame centred on the region, never in raw longitude.

A region's frame is the sphere rotated so that the region's centre sits at latitude 0, longitude 0. Points near
the centre get small local coordinates (local latitude, local longitude) in degrees, whichever side of the
antimeridian they are on, so a Pacific region whose places lie at 179 E and 179 W has local longitudes of about
-1 and +1 instead of raw longitudes that a regression would average to 0 (the far side of the Earth). The frame is
exact and invertible: only points 180 degrees from the centre hit the frame's own seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def unit_vectors(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """(N, 3) points on the unit sphere for latitudes and longitudes in degrees."""
    lat, lon = np.radians(np.asarray(latitude, np.float64)), np.radians(np.asarray(longitude, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def latlon_of(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (degrees, longitude in [-180, 180]) of (N, 3) vectors (need not be unit length)."""
    vectors = np.asarray(vectors, np.float64)
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    latitude = np.degrees(np.arctan2(z, np.hypot(x, y)))
    longitude = np.degrees(np.arctan2(y, x))
    return latitude, longitude


@dataclass(frozen=True)
class LocalFrame:
    """The sphere rotated so that (centre_latitude, centre_longitude) becomes (0, 0)."""

    centre_latitude: float
    centre_longitude: float

    @classmethod
    def centred_on(cls, latitude: np.ndarray, longitude: np.ndarray) -> LocalFrame:
        """The frame centred on the points' spherical mean (the normalised mean of their unit vectors), which,
        unlike the mean of raw longitudes, puts points at 179 E and 179 W around 180, not around 0."""
        mean = unit_vectors(latitude, longitude).mean(axis=0)
        if np.linalg.norm(mean) < 1e-9:
            raise ValueError("the points are spread evenly over the sphere; they have no centre")
        centre_lat, centre_lon = latlon_of(mean)
        return cls(float(centre_lat), float(centre_lon))

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) matrix taking the centre's unit vector to (1, 0, 0): turn by -longitude about the polar axis,
        then by +latitude about the new y axis."""
        lat, lon = np.radians(self.centre_latitude), np.radians(self.centre_longitude)
        about_z = np.array([[np.cos(lon), np.sin(lon), 0.0], [-np.sin(lon), np.cos(lon), 0.0], [0.0, 0.0, 1.0]])
        about_y = np.array([[np.cos(lat), 0.0, np.sin(lat)], [0.0, 1.0, 0.0], [-np.sin(lat), 0.0, np.cos(lat)]])
        return about_y @ about_z

    def to_local(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        """(N, 2) local (latitude, longitude) in degrees."""
        local_lat, local_lon = latlon_of(unit_vectors(latitude, longitude) @ self.rotation.T)
        return np.stack([local_lat, local_lon], axis=-1)

    def to_global(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude (degrees) of (N, 2) local coordinates; the inverse of :meth:`to_local`."""
        local = np.asarray(local, np.float64)
        return latlon_of(unit_vectors(local[..., 0], local[..., 1]) @ self.rotation)

    def to_dict(self) -> dict[str, Any]:
        return {"centre_latitude": self.centre_latitude, "centre_longitude": self.centre_longitude}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalFrame:
        return cls(float(data["centre_latitude"]), float(data["centre_longitude"]))
