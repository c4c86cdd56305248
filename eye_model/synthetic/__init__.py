"""Synthetic colour fundus photographs, so training and tests work offline.

The generator paints a posterior-pole fundus photograph the way a fundus
camera records it: a dark surround outside a circular field, an orange-red
retina with choroidal texture and illumination fall-off, a yellowish optic
disc with its paler cup, a branching vessel tree of arteries and veins
arching round a darker macula, then the signs of one of the four classes of
:data:`eye_model.config.CLASS_NAMES`, each graded by a severity in [0.3, 1]:

- ``cataract``: a blurred, hazy, washed-out, low-contrast view.
- ``diabetic_retinopathy``: microaneurysms, blot and flame haemorrhages,
  hard exudates clustered round the macula, cotton-wool spots.
- ``glaucoma``: a cup-to-disc ratio of 0.6-0.9, a paler disc, notching of
  the neuroretinal rim, vessels bending at the cup edge.
- ``normal``: none of these, sharp.

Camera and eye variation is drawn from the same wide distributions for
every class (domain randomisation), so a classifier cannot tell the classes
apart by anything but their signs, and meets real photographs inside what it
has seen: fundus colours from blond to deep red and brown (one of them
anchored on a real photograph, scikit-image's ``retina.jpg``), vessels from
brown to red, choroidal texture, exposure, colour casts, saturation, gamma,
vignetting, illumination gradients and uneven illumination, field size and
position, field stops cut by chords or marked by a notch, dust and
reflections on the optics, slight defocus, the camera's resolution, a small
rotation, left or right eye, and JPEG quality from 40 to 95.

Sampling and drawing are split: :func:`sample_fundus_params` draws every
random choice into a :class:`FundusParams` (so tests can read the class
signs, e.g. the cup-to-disc ratio), and :func:`draw_fundus` paints it
deterministically. Anatomy is laid out for a right eye in "field units"
(the field radius is 1, x to the right, y down, the disc nasal at x > 0);
:meth:`FundusParams.to_pixels` maps it into the image.

Modules, in the order an image is made:

- :mod:`~eye_model.synthetic.params`: the parameters and the class-sign ranges.
- :mod:`~eye_model.synthetic.sampling`: every random choice of one image.
- :mod:`~eye_model.synthetic.vessels`: the vessel tree, sampled and painted.
- :mod:`~eye_model.synthetic.lesions`: diabetic retinopathy lesions, sampled and painted.
- :mod:`~eye_model.synthetic.anatomy`: retina, macula and optic disc painted.
- :mod:`~eye_model.synthetic.optics`: cataract blur and haze, then the camera.
- :mod:`~eye_model.synthetic.artefacts`: the field stop's shape, dust and reflections.
- :mod:`~eye_model.synthetic.raster`: the pixel grid and helpers the painters share.
- :mod:`~eye_model.synthetic.drawing`: one image from its parameters.
- :mod:`~eye_model.synthetic.dataset`: a seeded dataset written as JPEG files.
"""

from eye_model.synthetic.artefacts import FieldShape, LensArtefacts, Speck
from eye_model.synthetic.dataset import generate_dataset, make_image_rng
from eye_model.synthetic.drawing import draw_fundus, render_fundus
from eye_model.synthetic.params import (
    CATARACT_BLUR_FRACTION,
    GENERATOR_VERSION,
    GLAUCOMA_CUP_TO_DISC,
    JPEG_QUALITY_RANGE,
    LESION_KINDS,
    MIN_IMAGE_SIZE,
    NORMAL_CUP_TO_DISC,
    RESOLUTION_RANGE,
    SEVERITY_RANGE,
    SHARP_BLUR_FRACTION,
    CupShape,
    FundusParams,
    Lesion,
    Lobe,
    Vessel,
)
from eye_model.synthetic.sampling import sample_fundus_params

__all__ = [
    "CATARACT_BLUR_FRACTION",
    "GENERATOR_VERSION",
    "GLAUCOMA_CUP_TO_DISC",
    "JPEG_QUALITY_RANGE",
    "LESION_KINDS",
    "MIN_IMAGE_SIZE",
    "NORMAL_CUP_TO_DISC",
    "RESOLUTION_RANGE",
    "SEVERITY_RANGE",
    "SHARP_BLUR_FRACTION",
    "CupShape",
    "FieldShape",
    "FundusParams",
    "LensArtefacts",
    "Lesion",
    "Lobe",
    "Speck",
    "Vessel",
    "draw_fundus",
    "generate_dataset",
    "make_image_rng",
    "render_fundus",
    "sample_fundus_params",
]
