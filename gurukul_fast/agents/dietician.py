"""The `dietician` persona: everyday nutrition guidance from a topic table.

General advice only. Whenever a message mentions a medical condition, medication or
pregnancy, the reply ends with a reminder to check changes with a doctor or registered
dietitian (`_MEDICAL_NOTE`); eating-disorder words get a gentle pointer to professional
help before anything else.
"""

from __future__ import annotations

from gurukul_fast.agents.keyword import KeywordAgent, Topic

__all__ = ["dietician_agent"]

# Tried in order; the first topic whose keywords occur answers.
_TOPICS = (
    Topic(
        "eating disorder",
        (
            "anorexi*",
            "bulimi*",
            "binge*",
            "purg*",
            "starv*",
            "eating disorder",
            "eating disorders",
            "make myself sick",
            "make myself vomit",
            "make myself throw up",
        ),
        (
            "Thank you for sharing that; it takes courage. Patterns like bingeing, purging or "
            "restricting deserve real support, and you don't have to handle them alone. Please "
            "talk to a doctor, a registered dietitian or a mental-health professional who works "
            "with eating concerns. Would it help to talk about how your meals feel right now?",
            "That sounds really hard. Eating concerns are common and treatable, and the best "
            "next step is a doctor or a dietitian who specialises in eating disorders. In the "
            "meantime, regular meals and being kind to yourself matter more than any rule.",
        ),
    ),
    Topic(
        "pregnancy",
        ("pregnan*", "expecting a baby", "breastfeed*", "lactat*"),
        (
            "During pregnancy and breastfeeding, focus on variety: dals and other proteins, "
            "dairy or fortified alternatives for calcium, green leafy vegetables, fruit and "
            "whole grains. Folate and iron matter most; skip alcohol, limit caffeine, and avoid "
            "raw or undercooked meat, fish and eggs and unpasteurised dairy.",
        ),
    ),
    Topic(
        "weight gain",
        ("gain weight", "gaining weight", "weight gain", "underweight", "too thin", "bulk"),
        (
            "To gain weight healthily, add energy-dense whole foods: nuts and nut butters, milk "
            "or curd, eggs or paneer, bananas, whole grains, and an extra snack between meals. "
            "Pair it with strength training so the gain is mostly muscle.",
            "Eat a little more often rather than forcing huge meals: three meals plus two or "
            "three snacks, a spoon of ghee or oil on your dal, and a smoothie with milk, banana "
            "and peanuts are easy ways to add energy.",
        ),
    ),
    Topic(
        "weight",
        (
            "lose weight",
            "losing weight",
            "weight loss",
            "overweight",
            "weight",
            "fat loss",
            "belly fat",
            "bmi",
        ),
        (
            "Lasting weight change comes from small habits you can keep: regular meals, half "
            "the plate vegetables, a palm of protein at each meal, fewer sugary drinks, and "
            "daily movement. Aim for about half a kilo a week at most rather than a crash diet.",
            "For healthy weight management, watch portions rather than banning foods, fill up "
            "on fibre and protein, sleep well, and stay active most days. Slow and steady "
            "changes are the ones that last.",
        ),
    ),
    Topic(
        "breakfast",
        ("breakfast", "morning meal"),
        (
            "A good breakfast pairs protein and fibre: oats with milk and fruit, eggs with "
            "whole-grain toast, poha or upma with vegetables and a side of curd, or yogurt with "
            "nuts and seeds. It keeps you full and your energy steady until lunch.",
            "Try to include three things at breakfast: a protein (eggs, curd, paneer, sprouts), "
            "a whole grain (oats, whole-wheat roti, millet), and a fruit or vegetable. Sugary "
            "cereals and pastries tend to leave you hungry again quickly.",
        ),
    ),
    Topic(
        "vegetarian",
        ("vegetarian", "vegetarians", "vegan", "vegans", "plant based", "veg diet", "no meat"),
        (
            "A vegetarian diet can meet all your needs. Combine dals or beans with grains, and "
            "include paneer, tofu, curd, nuts and seeds for protein. Keep an eye on vitamin "
            "B12, iron and vitamin D; vegans usually need a B12 supplement.",
            "Good plant proteins are lentils, chickpeas, rajma, soy, tofu, tempeh, paneer, curd, "
            "peanuts and seeds. Eat iron-rich foods like greens and legumes with some vitamin C "
            "(lemon, amla, citrus) to absorb more of the iron.",
        ),
    ),
    Topic(
        "protein",
        (
            "protein",
            "proteins",
            "paneer",
            "tofu",
            "egg",
            "eggs",
            "lentil",
            "lentils",
            "dal",
            "chicken",
            "fish",
            "whey",
            "muscle",
            "muscles",
        ),
        (
            "Most adults do well with roughly 0.8 to 1 gram of protein per kilo of body weight "
            "a day, a bit more if you train hard. Spread it across meals: eggs, dal, paneer, "
            "curd, tofu, chicken, fish or legumes.",
            "Include a protein source at every meal rather than loading it all at dinner. "
            "Whole foods come first; protein powder is a convenience, not a necessity.",
        ),
    ),
    Topic(
        "sugar",
        (
            "sugar*",
            "sweet",
            "sweets",
            "dessert",
            "desserts",
            "soda",
            "soft drink",
            "soft drinks",
            "chocolate",
            "chocolates",
            "candy",
            "mithai",
            "craving",
            "cravings",
        ),
        (
            "Try to keep added sugar low, ideally under about 25 grams (six teaspoons) a day. "
            "The biggest sources are usually sweet drinks, so start there. For cravings, fruit, "
            "a few dates or a small piece of dark chocolate can help.",
            "Cravings often follow skipped meals or poor sleep. Regular meals with protein and "
            "fibre steady your blood sugar. Enjoy sweets occasionally and mindfully rather "
            "than cutting them out completely.",
        ),
    ),
    Topic(
        "water",
        ("water", "hydrat*", "dehydrat*", "thirst*", "fluid", "fluids"),
        (
            "Most adults need around 2 to 3 litres of fluid a day, more in hot weather or when "
            "you exercise. A simple check: pale yellow urine usually means you are drinking "
            "enough. Water, buttermilk and soups all count.",
            "Keep a bottle with you and sip through the day; thirst is a late signal. Plain "
            "water is best; limit sugary drinks and juices.",
        ),
    ),
    Topic(
        "junk food",
        ("junk food", "fast food", "fried food", "pizza", "burger", "burgers", "chips", "takeaway"),
        (
            "Fast food is fine now and then; the problem is habit. Try eating it less often, "
            "choosing grilled over fried, skipping the sugary drink, and adding a salad or fruit "
            "on the side.",
            "If you order out a lot, look for simple swaps: roti instead of naan, dal or grilled "
            "dishes instead of creamy curries, and water instead of soda.",
        ),
    ),
    Topic(
        "carbohydrates",
        (
            "carb",
            "carbs",
            "carbohydrate",
            "carbohydrates",
            "rice",
            "bread",
            "roti",
            "chapati",
            "pasta",
            "wheat",
            "gluten",
            "keto",
            "millet",
            "millets",
        ),
        (
            "Carbohydrates are not the enemy; choose the whole kind. Brown or hand-pounded rice, "
            "whole-wheat roti, millets and oats give fibre and steadier energy than refined "
            "flour. Keep the grain to about a quarter of your plate.",
            "Very low-carb diets like keto can work short term but are hard to keep and not "
            "right for everyone. A balanced plate with whole grains usually serves people "
            "better over the long run.",
        ),
    ),
    Topic(
        "fats",
        ("fat", "fats", "oil", "oils", "ghee", "butter", "fried", "nuts", "omega 3"),
        (
            "Choose mostly unsaturated fats: nuts, seeds, mustard, groundnut or olive oil, and "
            "fish. Ghee and butter are fine in small amounts. Limit deep-fried and packaged "
            "foods, which carry the least healthy fats.",
            "A handful of nuts or seeds a day is a good habit. Measure cooking oil with a spoon "
            "rather than pouring; about three to four teaspoons a day per person is plenty.",
        ),
    ),
    Topic(
        "salt",
        ("salt", "salty", "sodium", "pickle", "pickles", "papad"),
        (
            "Keep salt to under about a teaspoon (5 grams) a day in total. Most of it hides in "
            "pickles, papad, namkeen, sauces and packaged foods, so cut those first. Herbs, "
            "lemon and spices add flavour without salt.",
        ),
    ),
    Topic(
        "fruit and vegetables",
        (
            "fruit",
            "fruits",
            "vegetable",
            "vegetables",
            "veggies",
            "greens",
            "salad",
            "salads",
            "fiber",
            "fibre",
            "constipat*",
        ),
        (
            "Aim for at least five portions of fruit and vegetables a day, in different colours. "
            "Fill half your plate with vegetables at lunch and dinner; whole fruit is better "
            "than juice because it keeps its fibre.",
            "Fibre helps digestion and keeps you full. Good sources are vegetables, fruit with "
            "the skin, whole grains, dals and seeds. Increase it gradually and drink enough water.",
        ),
    ),
    Topic(
        "snacks",
        ("snack", "snacks", "snacking", "munch*", "hungry"),
        (
            "Healthy snacks pair protein or fibre: roasted chana, a fruit with a few nuts, "
            "sprouts chaat, curd, or vegetable sticks with hummus. Plan them so hunger doesn't "
            "send you to the biscuit packet.",
        ),
    ),
    Topic(
        "meals",
        (
            "lunch",
            "dinner",
            "meal",
            "meals",
            "meal plan*",
            "diet plan*",
            "portion",
            "portions",
            "what should i eat",
            "diet",
        ),
        (
            "A simple plate method works for most meals: half vegetables, a quarter protein "
            "(dal, paneer, eggs, fish, chicken, tofu) and a quarter whole grains. Eat dinner a "
            "couple of hours before bed.",
            "Regular meal times help appetite and energy. A balanced day might be oats or eggs "
            "for breakfast, dal, sabzi, roti and curd for lunch, a fruit and nuts in the "
            "afternoon, and a lighter dinner with vegetables and protein.",
        ),
    ),
    Topic(
        "caffeine",
        ("coffee", "tea", "chai", "caffeine", "energy drink", "energy drinks"),
        (
            "Up to about three or four cups of coffee or tea a day is fine for most healthy "
            "adults. Watch the sugar you add, and avoid caffeine in the six hours before sleep.",
        ),
    ),
    Topic(
        "alcohol",
        ("alcohol", "beer", "wine", "whisky", "drinking", "liquor"),
        (
            "Less alcohol is better for health; there is no amount that is good for you. If "
            "you drink, keep it occasional, have alcohol-free days, eat first, and alternate "
            "with water.",
        ),
    ),
    Topic(
        "supplements",
        (
            "supplement",
            "supplements",
            "vitamin",
            "vitamins",
            "multivitamin",
            "multivitamins",
            "b12",
            "iron",
            "calcium",
            "zinc",
            "magnesium",
        ),
        (
            "Food comes first; supplements fill proven gaps. Common ones are vitamin D, B12 "
            "(especially for vegetarians and vegans) and iron, but it is worth getting a blood "
            "test before taking them, since too much of some is harmful.",
        ),
    ),
    Topic(
        "exercise",
        ("exercis*", "workout", "workouts", "gym", "running", "walking", "yoga", "training"),
        (
            "Eat a light carbohydrate-and-protein snack an hour or two before a workout, and a "
            "meal with protein afterwards to help recovery. Drink water before, during and after.",
        ),
    ),
    Topic(
        "fasting",
        ("fasting", "intermittent", "skip meal*", "skipping meal*", "skipped meal*", "vrat"),
        (
            "Intermittent fasting suits some people and not others. If you try it, eat "
            "balanced meals in your eating window and stay hydrated. It isn't advisable in "
            "pregnancy, for teenagers, or with diabetes or a history of eating disorders.",
        ),
    ),
    Topic(
        "greeting",
        ("hi", "hello", "hey", "namaste", "good morning", "good afternoon", "good evening"),
        (
            "Hello! I'm your dietician. Ask me about meals, breakfast ideas, protein, sugar, "
            "hydration or healthy weight, and I'll share practical tips.",
            "Namaste! What would you like to work on: energy, weight, meal planning or "
            "something else about food?",
        ),
    ),
    Topic(
        "thanks",
        ("thank", "thanks", "thank you", "thx"),
        ("You're welcome! Small, steady changes add up. Ask me anything else about food.",),
    ),
)

_MEDICAL_NOTE = Topic(
    "medical condition",
    (
        "diabet*",
        "blood sugar",
        "insulin",
        "blood pressure",
        "bp",
        "hypertension",
        "cholesterol",
        "heart",
        "kidney",
        "kidneys",
        "liver",
        "thyroid",
        "pcos",
        "pcod",
        "pregnan*",
        "breastfeed*",
        "allerg*",
        "intoleran*",
        "celiac",
        "coeliac",
        "ibs",
        "gout",
        "anaemi*",
        "anemi*",
        "cancer",
        "medication",
        "medications",
        "medicine",
        "medicines",
        "surgery",
        "disease",
        "condition",
        "doctor",
    ),
    (
        "Because your situation involves medical needs, please check any change to your diet "
        "with your doctor or a registered dietitian who knows your history.",
    ),
)

_FALLBACKS = (
    "Good nutrition is mostly simple habits: regular meals, half the plate vegetables, enough "
    "protein, whole grains, water through the day, and less added sugar and salt. Tell me "
    "more about what you eat and I can be more specific.",
    "I can help with meals, breakfast, protein, sugar, hydration, vegetarian eating and "
    "healthy weight. What does a typical day of eating look like for you?",
    "Every body is different. What is your goal: more energy, weight, managing cravings, or "
    "eating more balanced meals?",
)


def dietician_agent() -> KeywordAgent:
    """Return the built-in `dietician` agent ("Dietician"); call once at start-up."""
    return KeywordAgent("dietician", "Dietician", _TOPICS, _FALLBACKS, notes=(_MEDICAL_NOTE,))
