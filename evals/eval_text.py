"""A fixed evaluation text for perplexity, written for edgescale (public domain, CC0).

Plain English prose of everyday topics, so that a small chat model sees text
like what it was trained on; a few numbers and lists are mixed in. It never
changes: reports made on different days compare.
"""

EVAL_TEXT = """\
The village sat at the bend of a slow river, where the water widened into a shallow pool \
before it turned south toward the hills. Every morning the baker opened his shutters before \
the sun was up, and the smell of warm bread drifted across the square. Children walked to \
school along the towpath, counting the ducks and arguing about whether the heron by the mill \
was the same bird they had seen the day before.

In spring the fields beyond the river turned green almost overnight. Farmers planted wheat \
and barley in long straight rows, and by early summer the crops stood knee high. The weather \
mattered to everyone: a late frost could ruin the orchards, and a dry June meant that the \
wells ran low. People talked about the sky the way others talk about money, with a mix of \
hope and worry.

A simple rule of cooking is that heat changes food in predictable ways. Water boils at one \
hundred degrees Celsius at sea level, but at higher altitudes it boils at a lower \
temperature, which is why pasta takes longer to cook in the mountains. Sugar melts and then \
browns as it heats, and the brown color brings new flavors. Salt draws water out of \
vegetables, so a cook who salts sliced cucumbers and waits ten minutes will find a small \
pool of liquid in the bowl.

To make a basic loaf of bread, you need four things: flour, water, salt and yeast. Mix 500 \
grams of flour with 350 grams of warm water, add 10 grams of salt and 7 grams of dried \
yeast, and knead the dough for about ten minutes until it is smooth. Let it rise in a \
covered bowl for an hour, shape it, let it rise again, and bake it at 220 degrees for thirty \
to thirty-five minutes. The loaf is done when it sounds hollow as you tap the bottom.

Light travels faster than anything else we know. It takes a little more than eight minutes \
for light from the Sun to reach the Earth, and about one and a quarter seconds for light \
from the Moon. When we look at a distant star, we see it as it was when the light left it, \
which may have been thousands of years ago. In that sense, the night sky is a picture of the \
past.

Plants make their own food from sunlight. Inside their leaves, a green pigment called \
chlorophyll captures energy from light and uses it to join carbon dioxide from the air with \
water from the soil. The result is sugar, which the plant uses to grow, and oxygen, which it \
releases into the air. Almost every living thing on land depends on this process, directly \
or indirectly.

The old library in the town was built of red brick in the year 1894. It had tall windows, a \
creaking wooden floor and a reading room with a green lamp on every table. The librarian, a \
patient woman named Ruth, knew where every book was kept, even the ones that had been \
shelved in the wrong place. When a student asked her for help, she would walk to the shelf \
without looking at the catalog and pull out exactly the right volume.

Learning a new skill usually follows the same pattern. At first everything feels slow and \
clumsy, and progress is hard to see. After a few weeks of steady practice, the basic \
movements become automatic, and attention is free for the finer points. Experts in many \
fields say that short daily practice works better than long sessions once a week, because \
the brain consolidates what it has learned during rest and sleep.

A good map leaves things out. If it showed every tree and every stone, it would be as large \
as the land itself and just as hard to read. Mapmakers choose what matters for the reader: \
roads for the driver, contour lines for the hiker, depths and lighthouses for the sailor. \
The skill lies in knowing what to leave out.

There are seven days in a week, twelve months in a year and about three hundred and \
sixty-five days in a year, with one extra day every fourth year. The months have different \
lengths: thirty days for April, June, September and November, thirty-one for most of the \
others, and twenty-eight or twenty-nine for February. Many calendars in history were built \
around the Moon instead of the Sun, and some are still in use today.

On the last evening of the summer fair, the whole village gathered by the river. Someone had \
strung lanterns between the willow trees, and a small band played on a wooden stage. The \
baker sold the last of his honey cakes, the children ran between the tables, and when the \
music stopped, everyone stood quietly for a moment and watched the lights reflected in the \
dark water.
"""
